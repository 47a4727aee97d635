//! A consumer of a Redis Stream, in a consumer group: at-least-once delivery (a message read but
//! not acknowledged is redelivered, here by `XAUTOCLAIM` once it has been idle for a second), and
//! an effect applied exactly once per message with the message's own id as the idempotency key.
//!
//! The effect is an `INSERT` of a ledger row, which is not idempotent by itself (no unique
//! constraint: a second application would be a second row). It runs through
//! `Once::run_in_tx`, so the row and the message's idempotency record commit in one PostgreSQL
//! transaction: killed before `COMMIT`, neither exists and the redelivery applies it; killed
//! after `COMMIT` but before `XACK`, the redelivery finds the record and applies nothing.
//!
//! ```text
//! IDEM_REDIS_URL=redis://127.0.0.1:6379 IDEM_PG="host=127.0.0.1 user=postgres dbname=test" \
//!     cargo run --example consumer
//! ```
//! Settings (environment): `STREAM` (default `payments`), `GROUP` (`ledger`), `LEDGER_TABLE`
//! (`consumer_ledger`), `RECORDS_TABLE` (`consumer_records`), `EFFECT_DELAY_MS` (0: time the
//! effect takes inside its transaction), `ACK_DELAY_MS` (0: time between the commit and the
//! `XACK`, where a crash leaves an applied message unacknowledged). Each
//! message has fields `account` and `amount`. Prints `applied <id>` per acknowledged message and
//! `redelivered <id>` per message claimed from a consumer that stopped.

use idem_runtime::tokio_postgres::{self, NoTls};
use idem_runtime::{Idempotency, OnceError, PostgresStore};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use serde::Serialize;
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

/// A message's payload: the idempotency record's fingerprint is over it.
#[derive(Serialize)]
struct Payment {
    account: String,
    amount: i64,
}

/// Everything one consumer works with.
struct Consumer {
    redis: redis::aio::MultiplexedConnection,
    stream: String,
    group: String,
    name: String,
    apply: idem_runtime::Once,
    insert: String,
    delay: Duration,
    ack_delay: Duration,
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let pg = setting(
        "IDEM_PG",
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
    );
    let (ledger, records) = (
        setting("LEDGER_TABLE", "consumer_ledger"),
        setting("RECORDS_TABLE", "consumer_records"),
    );
    let (db, connection) = tokio_postgres::connect(&pg, NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {ledger} (msg_id text NOT NULL, account text NOT NULL, \
         amount bigint NOT NULL)"
    ))
    .await?;
    let idem = Idempotency::builder()
        .store(PostgresStore::connect_table(&pg, &records).await?)
        .unscoped()
        .build();

    let client = redis::Client::open(setting("IDEM_REDIS_URL", "redis://127.0.0.1:6379"))?;
    let mut consumer = Consumer {
        redis: client.get_multiplexed_async_connection().await?,
        stream: setting("STREAM", "payments"),
        group: setting("GROUP", "ledger"),
        name: format!("consumer-{}", std::process::id()),
        // The lease outlives one effect by far; a consumer killed mid-effect frees the key when
        // it runs out.
        apply: idem.once("ledger.apply").lease(Duration::from_secs(2)),
        insert: format!("INSERT INTO {ledger} (msg_id, account, amount) VALUES ($1, $2, $3)"),
        delay: Duration::from_millis(setting("EFFECT_DELAY_MS", "0").parse().unwrap_or(0)),
        ack_delay: Duration::from_millis(setting("ACK_DELAY_MS", "0").parse().unwrap_or(0)),
    };
    // The group may exist already (another consumer, an earlier run).
    let created: redis::RedisResult<()> = consumer
        .redis
        .xgroup_create_mkstream(&consumer.stream, &consumer.group, "0")
        .await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e.into());
        }
    }
    loop {
        consumer.round().await?;
    }
}

impl Consumer {
    /// Claims what stopped consumers left unacknowledged, then reads new messages.
    async fn round(&mut self) -> Result<(), Error> {
        let claimed: StreamAutoClaimReply = self
            .redis
            .xautoclaim_options(
                &self.stream,
                &self.group,
                &self.name,
                1000,
                "0-0",
                StreamAutoClaimOptions::default().count(50),
            )
            .await?;
        for message in &claimed.claimed {
            println!("redelivered {}", message.id);
            self.handle(message).await?;
        }
        let options = StreamReadOptions::default()
            .group(&self.group, &self.name)
            .count(10)
            .block(200);
        let read: StreamReadReply = self
            .redis
            .xread_options(&[&self.stream], &[">"], &options)
            .await?;
        for key in read.keys {
            for message in &key.ids {
                self.handle(message).await?;
            }
        }
        Ok(())
    }

    /// Applies one message's effect once, then acknowledges it. A message whose effect could not
    /// be applied now stays pending and comes back.
    async fn handle(&mut self, message: &StreamId) -> Result<(), Error> {
        let payment = Payment {
            account: message.get("account").unwrap_or_default(),
            amount: message.get("amount").unwrap_or(0),
        };
        let (insert, delay, id) = (&self.insert, self.delay, &message.id);
        let effect = async |db: &idem_runtime::deadpool_postgres::ClientWrapper| {
            tokio::time::sleep(delay).await;
            db.execute(insert, &[id, &payment.account, &payment.amount])
                .await
                .map(|_| ())
        };
        match self.apply.run_in_tx(id, &payment, effect).await {
            Ok(()) => {
                tokio::time::sleep(self.ack_delay).await;
                let _: () = self.redis.xack(&self.stream, &self.group, &[id]).await?;
                println!("applied {id}");
            }
            // Running elsewhere (or its lease not yet out), or the store is down: later.
            Err(
                e @ (OnceError::InProgress | OnceError::Store(_) | OnceError::CommitUnknown(_)),
            ) => {
                eprintln!("later {id}: {e}");
            }
            Err(e) => eprintln!("failed {id} (ran: {:?}): {e}", e.ran()),
        }
        Ok(())
    }
}
