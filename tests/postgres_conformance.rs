//! The store conformance suite against PostgreSQL (the local server: 127.0.0.1:5432, trust auth,
//! database `test`; `IDEM_PG` overrides). Without a reachable server the cases say so and skip;
//! with `CI` set that is a failure.

use idem::PostgresStore;

fn config() -> String {
    std::env::var("IDEM_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

async fn store() -> Option<((), PostgresStore)> {
    match PostgresStore::connect_table(&config(), "idem_conformance").await {
        Ok(s) => Some(((), s)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "skipped PostgreSQL conformance: no server at `{}` ({e})",
                config()
            );
            None
        }
        Err(e) => panic!("PostgreSQL is required in CI: {e}"),
    }
}

idem_runtime::store_conformance_tests!(guarded store());
