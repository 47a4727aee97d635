//! The local PostgreSQL (127.0.0.1:5432, trust auth, database `test`; `IDEM_PG` overrides) for
//! tests: a store on a table of the test's own, and a plain client for checking rows. Without a
//! reachable server tests say so in one line and skip; with `CI` set that is a failure.

use idem_runtime::tokio_postgres::{self, NoTls};
use idem_runtime::PostgresStore;

/// The libpq connection string of the test database.
pub fn config() -> String {
    std::env::var("IDEM_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// The host and port of the test PostgreSQL (for a proxy in front of it).
pub fn address() -> std::net::SocketAddr {
    let config = config();
    let field = |name: &str| {
        config
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .map(str::to_owned)
    };
    let host = field("host=").unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = field("port=").and_then(|p| p.parse().ok()).unwrap_or(5432);
    format!("{host}:{port}")
        .parse()
        .expect("a loopback host:port in IDEM_PG")
}

/// A store on `table` (created if missing), or `None` after printing why `test` is skipped.
pub async fn store(test: &str, table: &str) -> Option<PostgresStore> {
    match PostgresStore::connect_table(&config(), table).await {
        Ok(s) => Some(s),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped {test}: no PostgreSQL at `{}` ({e})", config());
            None
        }
        Err(e) => panic!("{test}: PostgreSQL is required in CI: {e}"),
    }
}

/// A plain client on the test database.
pub async fn client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&config(), NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A table name unique to this test run: `prefix_<pid>_<n>`.
pub fn table(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `SELECT count(*) FROM table`.
pub async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count rows")
        .get(0)
}

/// Drops the tables (with a records table, its step tables and token sequence) a test made.
pub async fn drop_tables(db: &tokio_postgres::Client, tables: &[&str]) {
    for t in tables {
        let _ = db
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {t}_steps, {t}_requests, {t}; DROP SEQUENCE IF EXISTS {t}_token;"
            ))
            .await;
    }
}
