//! Idempotent functions (`Idempotency::once`) on every store — memory, a private Redis, the local
//! PostgreSQL: a key runs once and its value comes back deserialized; other arguments are
//! refused; a duplicate in flight waits or is refused; a failure stores nothing; every error
//! says whether the function ran. And `run_in_tx`: the effect's SQL and the record commit
//! together, or neither does.

mod common;

use common::redis::{available, RedisServer};
use idem::{Idempotency, MemoryStore, OnceError, RedisStore, Store};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    id: String,
    amount: i64,
}

#[derive(Serialize)]
struct Transfer<'a> {
    account: &'a str,
    amount: i64,
    trace: &'a str,
}

fn idem(store: impl Store) -> Idempotency {
    Idempotency::builder()
        .store(store)
        .unscoped()
        .secret(b"once-test-secret-0123456789abcdef".to_vec())
        .build()
}

/// Every promise of `once`, on the store behind `idem`.
async fn the_promise(idem: Idempotency) {
    let runs = Arc::new(AtomicUsize::new(0));
    let f = idem.once("transfers.apply").ttl(Duration::from_secs(60));
    let apply = |amount: i64| {
        let runs = runs.clone();
        async move || {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, std::io::Error>(Receipt {
                id: format!("tr_{n}"),
                amount,
            })
        }
    };
    let args = Transfer {
        account: "acct-1",
        amount: 4200,
        trace: "t1",
    };

    // Runs once; the second call gets the first value back.
    let first = f.run("msg-1", &args, apply(4200)).await.unwrap();
    let again = f.run("msg-1", &args, apply(4200)).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Other arguments under the same key: refused, not run.
    let other = Transfer { amount: 1, ..args };
    let e = f.run("msg-1", &other, apply(1)).await.unwrap_err();
    assert!(matches!(e, OnceError::KeyReused), "{e}");
    assert_eq!(e.ran(), Some(false));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A duplicate in flight: refused at once by default…
    let (a, b) = tokio::join!(f.run("msg-2", &args, apply(4200)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.run("msg-2", &args, apply(4200)).await
    });
    assert!(a.is_ok());
    let e = b.unwrap_err();
    assert!(matches!(e, OnceError::InProgress), "{e}");
    assert_eq!(e.ran(), None);
    // …or waited for with `wait`: 20 concurrent calls, one run, one value.
    let waiting = f.clone().wait(Duration::from_secs(10));
    let before = runs.load(Ordering::SeqCst);
    let calls = (0..20).map(|_| waiting.run("msg-3", &args, apply(4200)));
    let values = futures_util::future::join_all(calls).await;
    assert_eq!(runs.load(Ordering::SeqCst), before + 1);
    let values: Vec<Receipt> = values.into_iter().map(Result::unwrap).collect();
    assert!(values.iter().all(|v| *v == values[0]));

    // A failure stores nothing: the next call runs it.
    let failing = async || Err::<Receipt, _>(std::io::Error::other("processor down"));
    let e = f.run("msg-4", &args, failing).await.unwrap_err();
    assert!(matches!(e, OnceError::Failed(_)));
    assert_eq!(e.ran(), Some(true));
    let before = runs.load(Ordering::SeqCst);
    f.run("msg-4", &args, apply(4200)).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), before + 1);

    // `semantic`: only the named fields count; a retry with another trace id is the same call.
    let sem = idem
        .once("transfers.semantic")
        .semantic(&["/account", "/amount"]);
    let one = sem.run("msg-5", &args, apply(4200)).await.unwrap();
    let retry = Transfer {
        trace: "t2",
        ..args
    };
    assert_eq!(sem.run("msg-5", &retry, apply(4200)).await.unwrap(), one);
    let e = sem.run("msg-5", &other, apply(1)).await.unwrap_err();
    assert!(matches!(e, OnceError::KeyReused));

    // A bad key, and a stored value read as another type.
    let e = f.run("", &args, apply(1)).await.unwrap_err();
    assert!(matches!(e, OnceError::KeyInvalid(_)));
    assert_eq!(e.ran(), Some(false));
    let e = f
        .run("msg-1", &args, async || Ok::<u8, std::io::Error>(1))
        .await
        .unwrap_err();
    assert!(matches!(e, OnceError::Unreadable(_)), "{e}");
    assert_eq!(e.ran(), Some(true));
}

#[tokio::test]
async fn once_on_the_memory_store() {
    the_promise(idem(MemoryStore::default())).await;
}

#[tokio::test]
async fn once_on_redis() {
    if !available("once_on_redis") {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    the_promise(idem(store)).await;
}

#[tokio::test]
async fn once_on_postgres() {
    let table = common::pg::table("once");
    let Some(store) = common::pg::store("once_on_postgres", &table).await else {
        return;
    };
    the_promise(idem(store)).await;
    common::pg::drop_tables(&common::pg::client().await, &[&table]).await;
}

/// `run_in_tx`: the effect (a row) and the record commit together. A failure rolls the row
/// back; a retry after success inserts nothing more.
#[tokio::test]
async fn run_in_tx_commits_the_effect_with_its_record() {
    let table = common::pg::table("once_tx");
    let Some(store) =
        common::pg::store("run_in_tx_commits_the_effect_with_its_record", &table).await
    else {
        return;
    };
    let db = common::pg::client().await;
    let ledger = format!("{table}_ledger");
    db.batch_execute(&format!("CREATE TABLE {ledger} (msg text, amount bigint)"))
        .await
        .unwrap();
    let f = idem(store).once("ledger.apply");
    let insert = format!("INSERT INTO {ledger} VALUES ($1, $2)");
    let apply = |msg: &'static str, fail: bool| {
        let insert = insert.clone();
        async move |db: &idem_runtime::deadpool_postgres::ClientWrapper| {
            db.execute(
                &insert,
                &[
                    &msg as &(dyn idem_runtime::tokio_postgres::types::ToSql + Sync),
                    &4200i64,
                ],
            )
            .await
            .map_err(|e| e.to_string())?;
            if fail {
                return Err("failed after the insert".to_owned());
            }
            Ok(4200i64)
        }
    };
    assert_eq!(
        f.run_in_tx("m-1", "m-1", apply("m-1", false))
            .await
            .unwrap(),
        4200
    );
    assert_eq!(
        f.run_in_tx("m-1", "m-1", apply("m-1", false))
            .await
            .unwrap(),
        4200
    );
    let e = f
        .run_in_tx("m-2", "m-2", apply("m-2", true))
        .await
        .unwrap_err();
    assert!(matches!(e, OnceError::Failed(_)));
    assert_eq!(
        common::pg::count(&db, &ledger).await,
        1,
        "the failed call's row rolled back"
    );
    assert_eq!(
        f.run_in_tx("m-2", "m-2", apply("m-2", false))
            .await
            .unwrap(),
        4200
    );
    assert_eq!(common::pg::count(&db, &ledger).await, 2);
    db.batch_execute(&format!("DROP TABLE {ledger}"))
        .await
        .unwrap();
    common::pg::drop_tables(&db, &[&table]).await;
}

/// `Once` follows the attribute's rules on `ttl` and `lease`: a short ttl lowers the default
/// lease (a function with `ttl(2 s)` runs once and gives its value back), and a lease not
/// shorter than the ttl is refused where the two are set, as `#[idempotent]` refuses it at
/// compile time.
#[tokio::test]
async fn once_follows_the_attributes_lease_rules() {
    let idem = idem(MemoryStore::default());
    let runs = AtomicUsize::new(0);
    let f = idem.once("short").ttl(Duration::from_secs(2));
    for _ in 0..2 {
        let n = f
            .run("s-1", &1, async || {
                Ok::<_, std::io::Error>(runs.fetch_add(1, Ordering::SeqCst))
            })
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    for (lease, ttl) in [(60, 2), (5, 2), (60, 60)] {
        let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            idem.once("long")
                .lease(Duration::from_secs(lease))
                .ttl(Duration::from_secs(ttl))
        }));
        assert!(set.is_err(), "lease {lease} s, ttl {ttl} s");
        let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            idem.once("long")
                .ttl(Duration::from_secs(ttl))
                .lease(Duration::from_secs(lease))
        }));
        assert!(set.is_err(), "ttl {ttl} s, lease {lease} s");
    }
    // Outside what the attribute accepts: a lease of 0 (no exclusion at all), a ttl of 0 or
    // past the clock's end, a wait past it.
    let refused = |set: &dyn Fn() -> idem_runtime::Once| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(set)).is_err()
    };
    assert!(refused(&|| idem.once("zero").lease(Duration::ZERO)));
    assert!(refused(&|| idem.once("zero").ttl(Duration::ZERO)));
    assert!(refused(&|| idem.once("max").ttl(Duration::MAX)));
    assert!(refused(&|| idem.once("max").wait(Duration::MAX)));
    assert!(!refused(&|| idem
        .once("fine")
        .ttl(Duration::from_secs(1))
        .wait(Duration::from_secs(5))));
}

/// A call dropped while its function runs releases its key from a task — but when the runtime
/// is gone (a drop during shutdown) there is none to spawn on: the drop logs and leaves the
/// key to its lease instead of panicking (`panic = "abort"` builds would abort).
#[test]
fn dropping_a_running_call_after_its_runtime_does_not_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let idem = rt.block_on(async { idem(MemoryStore::default()) });
    let f = idem.once("dropped");
    let mut call = Box::pin(f.run("d-1", &1, async || {
        std::future::pending::<()>().await;
        Ok::<u8, std::io::Error>(1)
    }));
    rt.block_on(async {
        let running = tokio::time::timeout(Duration::from_millis(100), call.as_mut()).await;
        assert!(running.is_err(), "still running");
    });
    drop(rt);
    drop(call);
}
