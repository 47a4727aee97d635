//! A store failure says what kind it is and keeps what caused it: a mistake only the operator
//! can fix (a missing table, a revoked privilege, a rotated password) is a configuration error,
//! not "unavailable", and the driver's own error is its `source()`. Real servers: the local
//! PostgreSQL and private `redis-server` processes.

mod common;

use std::error::Error as _;

use common::redis::{available, RedisServer};
use idem::{Fingerprint, StorageKey, Store, StoreError};
use std::time::Duration;

fn key(n: &str) -> StorageKey {
    let k = idem::IdempotencyKey::parse(n.as_bytes()).expect("a valid key");
    StorageKey::scoped("", "store-errors", b"", &k)
}

/// The driver's error under a store error, if it is of type `E`.
fn cause<E: std::error::Error + 'static>(e: &StoreError) -> Option<&E> {
    e.source()?.downcast_ref::<E>()
}

#[tokio::test]
async fn a_table_dropped_under_a_running_store_is_a_configuration_error() {
    let table = common::pg::table("idem_store_errors");
    let Some(store) = common::pg::store("store errors (PostgreSQL)", &table).await else {
        return;
    };
    let db = common::pg::client().await;
    common::pg::drop_tables(&db, &[&table]).await;
    let err = store
        .begin(
            &key("k"),
            &Fingerprint::strict("POST", "/", "", b"body"),
            Duration::from_secs(5),
            Duration::from_secs(60),
        )
        .await
        .expect_err("the table is gone");
    assert!(
        matches!(err, StoreError::Config(_)),
        "a missing table is the operator's to fix, got {err:?}"
    );
    let pg = cause::<idem_runtime::tokio_postgres::Error>(&err).expect("the driver's error");
    assert_eq!(
        pg.code(),
        Some(&idem_runtime::tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    );
}

#[tokio::test]
async fn a_wrong_password_or_a_missing_permission_is_a_configuration_error() {
    if !available("a_wrong_password_or_a_missing_permission_is_a_configuration_error") {
        return;
    }
    let server = RedisServer::start();
    server
        .cli(&["ACL", "SETUSER", "app", "on", ">right", "~*", "+@all"])
        .expect("create user app");
    // May connect and read the server's settings, but not run scripts.
    server
        .cli(&[
            "ACL",
            "SETUSER",
            "narrow",
            "on",
            ">right",
            "~*",
            "+@all",
            "-@scripting",
        ])
        .expect("create user narrow");
    let at =
        |user: &str, password: &str| format!("redis://{user}:{password}@127.0.0.1:{}", server.port);

    let ok = idem::RedisStore::connect(&at("app", "right")).await;
    assert!(ok.is_ok(), "the right password connects: {ok:?}");

    for (user, password, what) in [
        ("app", "rotated-away", "a wrong password"),
        ("narrow", "right", "a user without the scripting permission"),
    ] {
        let err = idem::RedisStore::connect(&at(user, password))
            .await
            .expect_err(what);
        assert!(
            matches!(err, StoreError::Config(_)),
            "{what} is the operator's to fix, got {err:?}"
        );
        assert!(
            cause::<redis::RedisError>(&err).is_some(),
            "{what}: the driver's error is kept as the source of {err:?}"
        );
    }
}
